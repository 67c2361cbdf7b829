variable "webhook_url" {
  description = "The webhook's public URL, exactly as in WEBHOOK_PUBLIC_URL (it is signed)."
  type        = string
  validation {
    condition     = can(regex("^https://[^/?#@]+/[^?#]*$", var.webhook_url))
    error_message = "webhook_url must be an https URL without query or fragment."
  }
}

variable "event_bus_name" {
  description = "DashScope publishes on the default bus of the account's region."
  type        = string
  default     = "default"
}

variable "rule_name" {
  description = "Name of the EventBridge rule."
  type        = string
  default     = "asr-ingest-transcription-finished"
}

variable "dead_letter_queue_arn" {
  description = "ARN of an existing dead-letter queue (MNS, RocketMQ, Kafka or an event bus); empty: create an MNS queue."
  type        = string
  default     = ""
}

variable "dead_letter_queue_name" {
  description = "Name of the MNS queue created when dead_letter_queue_arn is empty."
  type        = string
  default     = "asr-ingest-eventbridge-dlq"
}
