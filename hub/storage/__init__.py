"""Storage stage: line protocol, the InfluxDB HTTP client and the batching writer."""
