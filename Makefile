# k8slan top-level Makefile.

.PHONY: help
help:
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

include e2e/e2e.mk
