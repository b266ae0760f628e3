"""The router: worker registry, placement policy (placement.py), proxy, rollouts."""
