"""The node's gRPC servicers, one module per service; each is thin.

A servicer decodes the request, calls the domain functions (`node.match`,
`node.aggregate_rounds`, `node.overlap`, `node.followup`, …), encodes the answer,
and lets `node.session` turn refusals into status codes.
"""
