"""The router's OpenAI-compatible HTTP gateway: one more front door to the same RouterCore (placement, failover).

``schemas`` parses requests strictly; ``translate`` turns them into GenerateRequests and the answers into OpenAI's
JSON; ``chat`` renders chat messages with the base model's template; ``streams`` fans out ``n`` and writes
server-sent events; ``errors`` is the one table from typed errors to HTTP; ``app`` routes; ``server`` runs uvicorn
on the router's own event loop.
"""
