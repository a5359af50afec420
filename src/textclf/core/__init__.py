"""Plumbing every stage shares: typed params, paths, atomic writes, errors, code deps."""
