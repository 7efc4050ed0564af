"""A typed streaming command under supervision: see ``recipes/01-typed-streaming-command.md``."""
