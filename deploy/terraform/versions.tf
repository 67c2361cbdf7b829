# The EventBridge rule and HTTP target that push DashScope completion events to asr-ingest.
# See docs/eventbridge-setup.md. Requires the alicloud provider (alicloud_event_bridge_rule
# with push_retry_strategy and dead_letter_queue on targets).
terraform {
  required_version = ">= 1.3"
  required_providers {
    alicloud = {
      source  = "aliyun/alicloud"
      version = ">= 1.211.0"
    }
  }
}
