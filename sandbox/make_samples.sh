#!/usr/bin/env bash
# Regenerate the sample media (real synthetic speech) with espeak-ng and ffmpeg.
# Run: `make samples` (writes into sandbox/samples/). The outputs are committed; CI does not
# run this. Reruns are byte for byte identical (same espeak-ng and ffmpeg versions).
set -euo pipefail
cd "$(dirname "$0")/samples"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say() {  # say NAME VOICE "TEXT": 22.05 kHz speech from espeak-ng into $work/NAME.wav
    espeak-ng -v "$2" -s 150 -w "$work/$1.wav" "$3"
}

say hello en-us "Hello world, this is the asr ingest sandbox speaking."
say weather en-gb "Tomorrow will be sunny in the morning, with light rain in the evening."
say numbers en-us "One two three four five six seven eight nine ten."
say meeting en-us "The meeting starts at nine. Please bring the quarterly report."
say greeting en-gb "Good afternoon, and thank you for calling."
say phone en-us "Your call is important to us. Please stay on the line."

ff() { ffmpeg -hide_banner -loglevel error -y "$@"; }

ff -i "$work/hello.wav" -ar 16000 -ac 1 -c:a pcm_s16le hello.wav
ff -i "$work/weather.wav" -ar 16000 -ac 1 -c:a libmp3lame -b:a 32k weather.mp3
ff -i "$work/numbers.wav" -ar 16000 -ac 1 -c:a aac -b:a 32k -movflags +faststart numbers.m4a
# Ogg (opus, vorbis) picks a random stream serial number and writes the encoder's version
# into its comments: bitexact mode fixes the serial and drops the versions, so reruns give the
# same bytes (the other formats already do).
bitexact=(-fflags +bitexact -flags:a +bitexact -map_metadata -1)
ff -i "$work/meeting.wav" -ar 16000 -ac 1 -c:a libopus -b:a 24k "${bitexact[@]}" meeting.opus
ff -i "$work/greeting.wav" -ar 16000 -ac 1 -c:a flac greeting.flac
ff -i "$work/phone.wav" -ar 8000 -ac 1 -c:a pcm_s16le phone_8k.wav
# Two channels: a different speaker on each side.
ff -i "$work/hello.wav" -i "$work/greeting.wav" \
    -filter_complex "[0:a][1:a]amerge=inputs=2[a]" -map "[a]" -ar 16000 -c:a libvorbis -q:a 2 \
    "${bitexact[@]}" stereo.ogg

ls -l hello.wav weather.mp3 numbers.m4a meeting.opus greeting.flac phone_8k.wav stereo.ogg
