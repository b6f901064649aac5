-- wrk: POST /v1/threads/{id}/runs, one streamed run per request: against the static upstream
-- alone (the run stream served as a file: the ceiling for process-message) and through nginx
-- (which cannot add the message first, so it does less work per request than chatbot-proxy).
local threads = {}
-- The file holds the proxy's handles (`<thread id>.<signature>`): the upstream and nginx take
-- the thread id alone.
for line in io.lines(os.getenv("THREADS")) do threads[#threads + 1] = line:match("^[^.]+") end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["OpenAI-Beta"] = "assistants=v2"
wrk.body = '{"assistant_id":"asst_bench","stream":true}'
request = function()
  i = i % #threads + 1
  return wrk.format(nil, "/v1/threads/" .. threads[i] .. "/runs")
end
