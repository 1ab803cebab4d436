"""Plumbing every entry point shares: errors, CLI wrapper, config composition and checks, atomic
files, run locks and logs, signals, progress, Hydra DDP. Imports nothing else of the package."""
