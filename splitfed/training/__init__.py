"""Training pieces shared by clients, server and baselines: the loss, the optimizer, data batches and
shards, FedAvg, and the seams between a client and the trunk (``trunk.TrunkEndpoint``)."""
