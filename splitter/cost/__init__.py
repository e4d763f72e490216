"""The CostModel: a Profile, a NetworkModel and a codec → each cut's predicted latency, energy and
throughput (cut_cost, op_cost), the plan that chooses (plan) and the bandwidth sweep (sweep)."""
