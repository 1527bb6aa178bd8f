"""The project's services around the library: command lines (``cli``), safe files and keyed folders
(``files``), memory measurement (``memory``, its cases' processes from ``forkserver``), Markdown tables
(``report``), resumable training (``training``), the Fréchet distance (``frechet``), and the
gradient-accuracy harness (``accuracy``).

The sampling contract itself is :mod:`adjointdpm`'s face; nothing in it imports from here.
"""
