"""jobs/federated"""
