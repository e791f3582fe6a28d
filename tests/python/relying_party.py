"""Runs the README's relying-party snippet (PyJWT) against tokens the service issued.

Usage: python relying_party.py README.md BASE_URL < cases.json
The snippet between `<!-- relying-party:begin -->` and `<!-- relying-party:end -->` is run as
written, with its example host replaced by BASE_URL. Each case is
{"token", "brand", "order_id", "body_b64", "ref", "amount", "currency"}; the answer is one JSON
list with "ok" or the exception's class name per case, in order.
"""
import base64
import json
import re
import sys

readme, base_url = sys.argv[1], sys.argv[2]
text = open(readme, encoding="utf-8").read()
block = re.search(
    r"<!-- relying-party:begin -->\s*```python\n(.*?)```\s*<!-- relying-party:end -->", text, re.S
)
if block is None:
    sys.exit("the README has no relying-party snippet")
namespace = {}
exec(block.group(1).replace("https://orderguard.example", base_url), namespace)

results = []
for case in json.load(sys.stdin):
    body = base64.b64decode(case["body_b64"]) if case.get("body_b64") is not None else None
    try:
        namespace["check_approval"](
            case["token"], case["brand"], case["ref"], case["amount"], case["currency"],
            order_id=case.get("order_id"), body=body,
        )
        results.append("ok")
    except Exception as error:  # the class name is what the test asserts
        results.append(type(error).__name__)
print(json.dumps(results))
