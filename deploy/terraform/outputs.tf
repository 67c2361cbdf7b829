output "rule_name" {
  description = "The EventBridge rule pushing transcription completions to the webhook."
  value       = alicloud_event_bridge_rule.transcription_finished.rule_name
}

output "dead_letter_queue_arn" {
  description = "Where events go when the webhook still fails after a day of retries."
  value       = local.dead_letter_queue_arn
}
