"""Evaluations of the method on scripted and public data: each replays into a temporary store through
the same core code a chat uses, and reports measures. The CLI's `eval` commands are thin wrappers."""
