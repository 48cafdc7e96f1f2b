module k8slan.local/e2e/webhook

go 1.24
