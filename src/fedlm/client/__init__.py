"""Client-side work: local training that turns a global adapter into an update."""
