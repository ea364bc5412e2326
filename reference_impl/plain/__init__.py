"""Plain framework-only versions of each strategy, the code the book shows for copying.

One file per framework and strategy; each imports only its own framework. The tests hold
each against reference_impl.spec and the package.
"""
