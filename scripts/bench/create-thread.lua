-- wrk: GET create-thread as a whitelisted widget would.
wrk.method = "GET"
wrk.headers["Origin"] = "http://localhost"
