-- wrk: POST /v1/threads, directly to the upstream or through nginx (which injects the key): the
-- same upstream call chatbot-proxy makes for create-thread.
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
