data "alicloud_account" "current" {}

data "alicloud_regions" "current" {
  current = true
}

# Events that exhaust the retry policy land here instead of being dropped.
resource "alicloud_mns_queue" "dead_letter" {
  count                    = var.dead_letter_queue_arn == "" ? 1 : 0
  name                     = var.dead_letter_queue_name
  message_retention_period = 604800
}

locals {
  dead_letter_queue_arn = var.dead_letter_queue_arn != "" ? var.dead_letter_queue_arn : format(
    "acs:mns:%s:%s:queues/%s",
    data.alicloud_regions.current.regions[0].id,
    data.alicloud_account.current.id,
    var.dead_letter_queue_name,
  )
}

# DashScope's completion events of transcription tasks only: the default rule would forward
# every asynchronous task of the account (image, video, ...), docs/eventbridge-signature.md.
resource "alicloud_event_bridge_rule" "transcription_finished" {
  event_bus_name = var.event_bus_name
  rule_name      = var.rule_name
  description    = "DashScope transcription tasks finished -> asr-ingest webhook"
  status         = "ENABLE"
  filter_pattern = <<-EOT
    {
      "source": ["acs.dashscope"],
      "type": ["dashscope:System:AsyncTaskFinish"],
      "data": {"user_api_unique_key": [{"prefix": "apikey:v1:audio:asr:transcription:"}]}
    }
  EOT

  targets {
    target_id = "asr-ingest-webhook"
    type      = "https"
    endpoint  = var.webhook_url
    # 176 retries over about a day; the console default (BACKOFF_RETRY) gives up after
    # 3 tries within a minute and loses events.
    push_retry_strategy = "EXPONENTIAL_DECAY_RETRY"

    dead_letter_queue {
      arn = local.dead_letter_queue_arn
    }

    param_list {
      resource_key = "url"
      form         = "CONSTANT"
      value        = var.webhook_url
    }
    # The complete event, byte for byte: the signature covers the exact body.
    param_list {
      resource_key = "Body"
      form         = "ORIGINAL"
    }
    param_list {
      resource_key = "Network"
      form         = "CONSTANT"
      value        = "PublicNetwork"
    }
  }
}
