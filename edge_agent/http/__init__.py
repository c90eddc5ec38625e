"""HTTP/REST transport: the KServe v2 REST protocol with Triton's binary tensor data extension,
multipart image uploads, and Triton's model configuration, statistics and repository index.

Translation only, like ``grpc/``: ``codec.py`` maps JSON / binary / multipart to and from
``serving/requests.py``, ``routes.py`` calls ``DataPlane``, ``status.py`` maps ``AgentError`` to
HTTP statuses in one place, and ``server.py`` is the HTTP/1.1 server itself.

Why httptools, and not a framework: the agent's budget is 100 MB RSS with a model loaded, and it
already sat at ~99 MB restarted into the MLP before this transport existed. Measured in this
venv on top of the agent's own imports: ``aiohttp.web`` adds 9.8 MB RSS and 108 ms of import
time (it brings its client, connector, SSL setup, multidict, yarl, ...), which alone would break
the budget; ``httptools`` adds 0.2 MB and 2 ms, and ``h11`` 0.2 MB and 7 ms. Between those two,
httptools is the C ``llhttp`` parser (Node.js's, maintained by MagicStack, used by uvicorn) with
callbacks, so per-request parsing costs microseconds and a body arrives without Python-level
byte handling, while ``h11`` parses in pure Python. What a framework would add here is routing
for a dozen fixed paths, JSON and multipart, all of which the protocol pins down exactly; the
server (``server.py``) is one ``asyncio.Protocol`` on the agent's event loop, next to the
``grpc.aio`` server, so an inference from either transport takes the same path through the data
plane with no thread hop. FastAPI/Starlette (the control plane's stack) are excluded outright.
"""
