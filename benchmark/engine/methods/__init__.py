"""Personalization methods: small plugins on the one shared training loop (benchmark.engine.train).

A method is a `Method` subclass (benchmark.engine.methods.base) in a file of its own, named by its
conf's `plugin` (conf/method/<name>.yaml) and imported when a run sets it up; nothing registers it.
This package imports nothing, so that validating a config finds a method's module without torch.
"""
