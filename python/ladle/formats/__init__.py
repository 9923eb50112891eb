"""Inputs: checkpoint files and directories read header-only, tensor sets of
every input kind, key maps and patterns.
"""
