"""Drives `keel serve --api`'s /v1/embeddings with the official openai client.

Usage: openai_embeddings.py PORT. Prints JSON: the embeddings of a list (the client's default
base64 encoding) and of one string as floats, the usage, and a bad request's status and body.
"""
import json
import sys

import openai

client = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="none")
texts = ["I love pizza!", "The cat sat on the mat."]
listed = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
single = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
try:
    client.embeddings.create(model="all-MiniLM-L6-v2", input=[])
    bad = None
except openai.BadRequestError as e:
    bad = [e.status_code, e.body]
print(json.dumps({
    "listed": [d.embedding for d in listed.data],
    "indices": [d.index for d in listed.data],
    "usage": [listed.usage.prompt_tokens, listed.usage.total_tokens],
    "single": single.data[0].embedding,
    "bad": bad,
}))
