# Sourced by .ci/run after setup: make tools installed into .ci/tools visible to the tests.
if [ -d "$PWD/.ci/tools/bin" ]; then export PATH="$PWD/.ci/tools/bin:$PATH"; fi
