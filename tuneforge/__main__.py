"""`python -m tuneforge ...`, and what `torchrun ... -m tuneforge train CONFIG` starts in every process."""

from tuneforge.cli import main

main()
