"""The federated round without Flower: what a client does and what the server does.

``clients/`` and ``server/`` only move arrays between Flower messages and
these functions, so everything here runs and is tested in one process.

- ``weights``: the model <-> one flat float32 vector (the only such pair);
- ``federation``: what a process needs to play clients or server (task, model, codecs, shards);
- ``client``: one client's round (decode, train, encode the update);
- ``server``: scoring the global model and reporting each round.
"""
