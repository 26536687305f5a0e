"""The WebRTC lip-sync gateway: server, sessions, tracks, VAD, inference, A/V sync, web page."""
