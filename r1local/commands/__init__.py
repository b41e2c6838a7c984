"""One module per CLI verb. Each has ``add_arguments(parser)`` and ``run(args) -> int``.

Modules here import only argparse at the top; anything heavy is imported inside ``run``
so that ``r1local --help`` stays fast.
"""
