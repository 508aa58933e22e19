"""Drives `keel serve --api` with the official openai client (tests/api.rs runs it and checks
what it prints against `keel generate` and the golden file). Usage:
openai_client.py PORT MODEL LCM_JSON GOLDEN_PROMPT"""
import json
import sys
import urllib.error
import urllib.request

import openai

port, model, lcm, golden_prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
base = f"http://127.0.0.1:{port}/v1"
client = openai.OpenAI(base_url=base, api_key="unused")
messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
greedy = dict(model=model, max_tokens=8, temperature=0)
out = {"models": [m.id for m in client.models.list().data]}

chat = client.chat.completions.create(messages=messages, logprobs=True, **greedy)
out["chat"] = chat.choices[0].message.content
out["chat_finish"] = chat.choices[0].finish_reason
out["chat_usage"] = chat.usage.model_dump(exclude_none=True)
out["chat_logprobs"] = [t.logprob for t in chat.choices[0].logprobs.content]
stream = client.chat.completions.create(
    messages=messages, stream=True, stream_options={"include_usage": True}, **greedy
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    usage = chunk.usage or usage
out["chat_stream"] = "".join(pieces)
out["chat_stream_usage"] = usage.model_dump(exclude_none=True)
out["chat_lcm"] = (
    client.chat.completions.create(messages=messages, extra_body={"keel": {"lcm": lcm}}, **greedy)
    .choices[0]
    .message.content
)

prompt = "Once upon a time"
out["completion"] = client.completions.create(prompt=prompt, **greedy).choices[0].text
out["completion_stream"] = "".join(
    c.choices[0].text for c in client.completions.create(prompt=prompt, stream=True, **greedy)
)
# A stop string from inside the greedy text: the reply ends just before it, streamed or not.
stop = out["completion"][4:9]
out["stop"] = stop
stopped = client.completions.create(prompt=prompt, stop=[stop], **greedy).choices[0]
out["stopped"], out["stopped_finish"] = stopped.text, stopped.finish_reason
out["stopped_stream"] = "".join(
    c.choices[0].text for c in client.completions.create(prompt=prompt, stop=stop, stream=True, **greedy)
)

# Alternatives: chat's top_logprobs and a completion's logprobs=N, whole and streamed.
def chat_entries(content):
    return [[t.token, t.logprob, [[a.token, a.logprob] for a in t.top_logprobs]] for t in content]


top = client.chat.completions.create(messages=messages, logprobs=True, top_logprobs=5, **greedy)
out["chat_top"] = chat_entries(top.choices[0].logprobs.content)
entries = []
for chunk in client.chat.completions.create(
    messages=messages, logprobs=True, top_logprobs=5, stream=True, **greedy
):
    if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
        entries += chat_entries(chunk.choices[0].logprobs.content)
out["chat_top_stream"] = entries


def completion_logprobs(lp):
    return {"tokens": lp.tokens, "token_logprobs": lp.token_logprobs, "top_logprobs": lp.top_logprobs,
            "text_offset": lp.text_offset}


whole = client.completions.create(prompt=golden_prompt, logprobs=5, **greedy).choices[0]
out["completion_top"] = completion_logprobs(whole.logprobs)
out["completion_top"]["text"] = whole.text
merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
for chunk in client.completions.create(prompt=golden_prompt, logprobs=5, stream=True, **greedy):
    if chunk.choices and chunk.choices[0].logprobs:
        for key, values in completion_logprobs(chunk.choices[0].logprobs).items():
            merged[key] += values
out["completion_top_stream"] = merged

# Bad input: OpenAI's error object with status 400, and the server stays up.
def status(body):
    req = urllib.request.Request(base + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)

out["bad_json"] = status(b"{not json")
out["bad_role"] = status(json.dumps({"model": model, "messages": [{"content": "x"}]}).encode())
try:
    client.chat.completions.create(messages=messages, model=model, max_tokens=10**9)
    out["too_long"] = None
except openai.BadRequestError as e:
    out["too_long"] = [e.status_code, e.message]
out["still_up"] = client.chat.completions.create(messages=messages, **greedy).choices[0].message.content
print(json.dumps(out))
