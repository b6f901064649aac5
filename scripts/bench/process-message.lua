-- wrk: POST process-message, cycling through pre-created threads (one answer at a time per
-- thread, so each connection takes the next thread in turn). Thread ids come from the file
-- named by the THREADS environment variable, one per line.
local threads = {}
for line in io.lines(os.getenv("THREADS")) do threads[#threads + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Origin"] = "http://localhost"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #threads + 1
  local body = '{"threadId":"' .. threads[i] .. '","message":"benchmark message number one"}'
  return wrk.format(nil, nil, nil, body)
end
