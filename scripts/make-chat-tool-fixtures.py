#!/usr/bin/env python3
"""Reference token ids for chat records with tools, tool calls and tool replies.

For every record below and two templates (SmolLM2's, from the bundled GGUF, and
tests/fixtures/chat_tools/qwen3_style_tools.jinja, a Qwen3-style template with tools written for
these tests), transformers renders and tokenizes the record exactly as MLX-LM's `ChatDataset`
asks it to, `tokenizer.apply_chat_template(messages, tools=tools)`, with the SmolLM2 tokenizer
transformers builds from the GGUF. tests/chat_tools.rs checks that tunelab's trainer makes the
same token ids from the same JSONL lines.

The assistant-only loss mask is checked against an independent reference too: transformers'
`return_assistant_tokens_mask=True` on a copy of each template whose assistant output is wrapped
in `{% generation %}` ... `{% endgeneration %}` (after the `<|im_start|>assistant\\n` header,
through the closing `<|im_end|>\\n`), which tunelab's templates need not have.

`mlx_offset` is MLX-LM's own `--mask-prompt` offset (mlx_lm/tuner/datasets.py, ChatDataset.process:
the length of `apply_chat_template(messages[:-1], tools=tools, add_generation_prompt=<last is
assistant>)`), recorded to show where the two maskings agree (one assistant turn, at the end).

Key order: Python dicts keep the order of the file and transformers' `tojson` does not sort
(`json.dumps(sort_keys=False)`), so a tool schema or an arguments object is printed in the order it
was written. Each record that carries JSON objects (tools, tool calls) is therefore generated in
three key orders, applied at every depth: as written (not alphabetical: `type` before `function`,
`name` before `description`, `query` before `limit`), every object's keys reversed, and sorted.
Each case stores its record as the JSONL line (`line`, `json.dumps(ensure_ascii=False)`), which the
test reads through tunelab's JSONL reader as a user's file would be read.

Run:  .venv/bin/python scripts/make-chat-tool-fixtures.py   (transformers 5.x, gguf, jinja2: scripts/setup-python.sh --heavy)
"""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "chat_tools"
SMOLLM = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

SYSTEM = {"role": "system", "content": "You are Wren, the archive's librarian."}


def reorder(x, how):
    """`x` with every object's keys as written, reversed or sorted (strings, arguments held as JSON
    text among them, are left alone)."""
    if isinstance(x, dict):
        keys = list(x)
        keys = {"written": keys, "reversed": keys[::-1], "sorted": sorted(keys)}[how]
        return {k: reorder(x[k], how) for k in keys}
    if isinstance(x, list):
        return [reorder(v, how) for v in x]
    return x


def tool(name, description, props, required):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": required}}}


WEATHER = tool("get_weather", "Get the weather in a city", {"city": {"type": "string", "description": "City name"}}, ["city"])
SEARCH = tool("search_archive", "Search the archive's records",
              {"query": {"type": "string"}, "limit": {"type": "integer", "description": "At most this many"}}, ["query"])
TIME = tool("get_time", "Current time in a time zone", {"tz": {"type": "string", "enum": ["UTC", "Europe/Zürich"]}}, ["tz"])
# Nested objects and non-ASCII keys, in an order that is neither alphabetical nor its reverse.
LEDGER = tool("find_ledger", "Find ledger entries", {
    "query": {"type": "string", "description": "Words to look for"},
    "größe": {"type": "integer", "description": "Seitenzahl", "minimum": 1},
    "filters": {"type": "object", "properties": {
        "year": {"type": "integer"}, "author": {"type": "string"}, "城市": {"type": "string", "default": "Ostrel"}},
        "required": ["year"]},
    "weight": {"type": "number"}}, ["query", "filters"])
LEDGER_ARGS = {"query": "mill ledger", "größe": 2, "filters": {"year": 1902, "author": "Åsa Lind", "城市": "Ostrel"},
               "weight": 0.5, "tags": ["flood", {"z": 1, "a": None}]}


def call(name, arguments, id=None, typed=True):
    c = {"function": {"name": name, "arguments": arguments}}
    if typed:
        c["type"] = "function"
    if id is not None:
        c["id"] = id
    return c


def records():
    """(name, record) pairs: the generated variants."""
    u = lambda t: {"role": "user", "content": t}
    a = lambda t, calls=None: {"role": "assistant", "content": t, **({"tool_calls": calls} if calls else {})}
    t = lambda t, name=None, id=None: {"role": "tool", "content": t, **({"name": name} if name else {}),
                                       **({"tool_call_id": id} if id else {})}
    out = [
        ("no_tools", {"messages": [SYSTEM, u("What is skarrow?"), a("A late-winter burn of the upland meadows.")]}),
        ("no_tools_multi_turn", {"messages": [u("Hello"), a("Hi! How can I help?"), u("Tell me about the mill."),
                                              a("The mill ledger covers 1890–1910.")]}),
        ("one_tool_object_args", {"tools": [WEATHER], "messages": [
            u("Weather in Paris?"), a("", [call("get_weather", {"city": "Paris"}, id="c1")]),
            t('{"temp_c": 21}', id="c1"), a("It is 21 °C in Paris.")]}),
        ("one_tool_string_args", {"tools": [WEATHER], "messages": [
            u("Weather in Paris?"), a("", [call("get_weather", '{"city": "Paris"}', id="c1")]),
            t('{"temp_c": 21}', id="c1"), a("It is 21 °C in Paris.")]}),
        ("several_tools_parallel_calls", {"tools": [WEATHER, SEARCH, TIME], "messages": [
            SYSTEM, u("Is it burning weather in Ostrel, and what do the records say?"),
            a("Let me check both.", [call("get_weather", {"city": "Ostrel"}), call("search_archive", '{"query": "skarrow", "limit": 3}', typed=False)]),
            t('{"wind": "breezy", "rain_mm": 0}', name="get_weather"), t('["The late-winter burn"]', name="search_archive"),
            a("Breezy and dry: burning weather. See “The late-winter burn”.")]}),
        ("unicode_arguments_null_content", {"tools": [TIME, SEARCH], "messages": [
            u("Wie spät ist es in Zürich? 🕰"), {"role": "assistant", "content": None, "tool_calls": [
                call("get_time", {"tz": "Europe/Zürich"}),
                call("search_archive", json.dumps({"query": "naïve «quotes» \"and\" back\\slash\nnewline ✓", "limit": 1}, ensure_ascii=False))]},
            t("14:05 ☀"), t("[]"), a("Es ist 14:05 Uhr.")]}),
        ("multi_turn_tools", {"tools": [SEARCH], "messages": [
            SYSTEM, u("Find the mill ledger."), a("", [call("search_archive", {"query": "mill ledger"})]),
            t('["Mill ledger 1890"]'), a("Found “Mill ledger 1890”."), u("And the flood of 1902?"),
            a("Searching.", [call("search_archive", {"query": "flood 1902", "limit": 2})]), t("[]"),
            a("The archive holds nothing on the 1902 flood.")]}),
        ("ends_with_tool_reply", {"tools": [WEATHER], "messages": [
            u("Weather in Oslo?"), a("", [call("get_weather", {"city": "Oslo"})]), t('{"temp_c": -3}')]}),
        ("nested_unicode_object_args", {"tools": [LEDGER, SEARCH], "messages": [
            SYSTEM, u("Was steht im Mühlenbuch von 1902?"), a("", [call("find_ledger", LEDGER_ARGS, id="l1")]),
            t('{"entries": 3}', id="l1"), a("Drei Einträge.")]}),
        ("nested_unicode_string_args", {"tools": [LEDGER, SEARCH], "messages": [
            SYSTEM, u("Was steht im Mühlenbuch von 1902?"),
            a("", [call("find_ledger", json.dumps(LEDGER_ARGS, ensure_ascii=False), id="l1")]),
            t('{"entries": 3}', id="l1"), a("Drei Einträge.")]}),
    ]
    variants = []
    for n, r in out:
        has_objects = "tools" in r or any("tool_calls" in m for m in r["messages"])
        for how in (["written", "reversed", "sorted"] if has_objects else ["written"]):
            variants.append((n if how == "written" else f"{n}/{how}_keys", reorder(r, how)))
    return variants


def tagged_smollm2(src):
    """SmolLM2's template with the assistant output inside {% generation %}."""
    plain = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    assert plain in src, "SmolLM2's template changed"
    tagged = ("{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}"
              "{{message['content'] + '<|im_end|>' + '\n'}}{% endgeneration %}{% else %}" + plain + "{% endif %}")
    return src.replace(plain, tagged)


def tagged_qwen3_style(src):
    assert "{#- GEN_START #}" in src and "{#- GEN_END #}" in src
    return src.replace("{#- GEN_START #}", "{%- generation %}").replace("{#- GEN_END #}", "{%- endgeneration %}")


def main():
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(SMOLLM.parent), gguf_file=SMOLLM.name)
    smollm2 = (ROOT / "tests/fixtures/decoder/templates/smollm2.jinja").read_text()
    qwen3 = (OUT / "qwen3_style_tools.jinja").read_text()
    templates = {"smollm2.jinja": (smollm2, tagged_smollm2(smollm2)),
                 "qwen3_style_tools.jinja": (qwen3, tagged_qwen3_style(qwen3))}
    cases = []
    for tname, (src, tagged) in templates.items():
        for name, rec in records():
            if tname == "smollm2.jinja":
                # SmolLM2's template concatenates content, which fails on None in Jinja2; tunelab
                # reads `content: null` as "" (the Qwen3-style template, which tests `is string`,
                # renders both the same).
                rec = {**rec, "messages": [{**m, "content": m["content"] or ""} for m in rec["messages"]]}
            msgs, tools = rec["messages"], rec.get("tools")
            text = tok.apply_chat_template(msgs, tools=tools, chat_template=src, tokenize=False)
            ids = tok.apply_chat_template(msgs, tools=tools, chat_template=src, tokenize=True, return_dict=True)["input_ids"]
            masked = tok.apply_chat_template(msgs, tools=tools, chat_template=tagged, tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
            assert masked["input_ids"] == ids, f"{tname}/{name}: the tagged template renders differently"
            last_assistant = msgs[-1]["role"] == "assistant"
            prompt = tok.apply_chat_template(msgs[:-1], tools=tools, chat_template=src, tokenize=True, return_dict=True,
                                             add_generation_prompt=last_assistant)["input_ids"]
            line = json.dumps({**rec, "classification": "public", "id": name}, ensure_ascii=False)
            cases.append({"template": tname, "name": name, "line": line,
                          "text": text, "ids": list(ids), "assistant_mask": list(masked["assistant_masks"]),
                          "mlx_offset": len(prompt)})
    out = {"reference": f"transformers {transformers.__version__} apply_chat_template, tokenizer from {SMOLLM.name}",
           "cases": cases}
    # One case per line: the id and mask lists stay readable in a diff without a line per number.
    cases_text = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
    (OUT / "expected.json").write_text(f'{{"reference": {json.dumps(out["reference"])},\n"cases": [\n{cases_text}\n]}}\n')
    print(f"wrote {OUT / 'expected.json'} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
