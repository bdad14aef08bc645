"""The web layer: every local server on one ASGI stack (Starlette + uvicorn) — `tuneforge serve`'s OpenAI-compatible
endpoint (`openai`), the runs UI (`ui`, with `launcher`) and the human-feedback page (`feedback`). `guard` is what
every one of them checks before a route runs; `base` what they share after it (errors, JSON bodies, listening)."""
