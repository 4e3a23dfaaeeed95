"""The privacy officer's web console for one node directory (`fedtrace console NODE_DIR`).

A small Starlette application served on loopback by default: follow-up requests to
decide, the audit trail and its verification, the policy in plain words, remaining
budgets and the node's datasets and epochs. Modules:

- `node.console.auth`: the one-time start token, officer sessions and CSRF tokens;
- `node.console.data`: read-only views of the node directory (typed values);
- `node.console.decisions`: approving and refusing a request on behalf of a session;
- `node.console.api`: the JSON API under ``/api``;
- `node.console.views`: the server-rendered pages (Jinja2, autoescaped);
- `node.console.app`: the application, its session gate and security headers;
- `node.console.launch`: binding the listener and running uvicorn.
"""
