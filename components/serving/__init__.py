"""An OpenAI-compatible HTTP server over the project's decoders (AR / vanilla SD / PEARL)."""
