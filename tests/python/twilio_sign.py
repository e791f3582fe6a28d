"""Signs Twilio status callbacks with the official `twilio` package's RequestValidator.

Reads a JSON list of {"auth_token", "url", "params": {name: value}} from stdin and prints
the list of X-Twilio-Signature values Twilio would send, so orderguard's check of
/v1/callbacks/sms/twilio is tested against Twilio's own code (tests/api/twilio.rs).
"""

import json
import sys

from twilio.request_validator import RequestValidator

cases = json.load(sys.stdin)
signatures = []
for case in cases:
    validator = RequestValidator(case["auth_token"])
    signature = validator.compute_signature(case["url"], case["params"])
    # Twilio's validator accepts what it computed: the pair is consistent on its side.
    assert validator.validate(case["url"], case["params"], signature)
    signatures.append(signature)
json.dump(signatures, sys.stdout)
