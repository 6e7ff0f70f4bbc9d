"""jobs/ray"""
