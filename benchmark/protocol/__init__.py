"""The protocol: run configs (compose, validate, identity), stopping criteria and strategies. No torch."""
