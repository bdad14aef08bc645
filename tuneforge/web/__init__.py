"""The web layer: local servers on one ASGI stack (Starlette + uvicorn) — `tuneforge serve`'s OpenAI-compatible
endpoint now; the runs UI and the feedback page to follow onto it. `guard` is what every one of them checks."""
