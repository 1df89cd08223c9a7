"""InterCode (Yang et al., 2023): interactive SQL and Bash environments, rewards, tasks and policies."""
