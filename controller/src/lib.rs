//! LAN controller and validating webhook.
