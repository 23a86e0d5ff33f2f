"""swarmpool: instant, pre-executed notebook web apps from a warm pool on Docker Swarm."""
