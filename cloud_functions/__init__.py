"""Cloud tier: the Lambda behind API Gateway that runs the teacher model under per-tenant daily budgets.

Modules: `settings` (frozen configuration from the environment), `errors` (typed errors with HTTP status
and stable code), `budget` (DynamoDB budget ledger). Nothing here does work at import time.
"""
