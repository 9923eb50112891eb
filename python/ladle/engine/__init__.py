"""Plans and their execution: the bridge to the C++ core, outputs written
atomically, live modules, verification and torch.distributed ranks.
"""
