"""`make bench`: the sync engine's figures (time, requests, bytes, rows, memory) against floors and a peer.

`python -m bench` runs every scenario at its default size; `python -m bench SCENARIO --listings N`
runs one. Results go to bench/results/<timestamp>.json and bench/results/latest.json.
"""
