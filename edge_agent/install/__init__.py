"""The install wing: packages on disk and the crash-safe way they become the committed state.

``installer`` runs verify -> stage -> load -> self_test -> activate -> commit, ``journal``
records the install in progress so a restart can tell how far it got, ``store`` keeps extracted
packages and ``state.json``, the only file that decides what serves after a restart.
"""
