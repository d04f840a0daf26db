"""Workloads for a MySQL-protocol source: go-tpc's TPC-C and a table covering every replicated type."""
