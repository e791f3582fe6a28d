#!/usr/bin/env bash
# Regenerates the README's screenshots of the example brands' code pages: the browser test
# (headless Chromium, installed by the test command) writes them into test-output/, and this
# copies them here.
#
#   bash docs/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/run.sh browser::each_brand_approves_inside_a_shop_iframe_and_tells_the_shop
for brand in nordwind fjallnet; do
  cp "test-output/$brand-code-page.png" "docs/$brand-code-page.png"
done
echo "docs/nordwind-code-page.png and docs/fjallnet-code-page.png updated" >&2
