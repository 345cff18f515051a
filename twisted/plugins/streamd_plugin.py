from twisted.application.service import ServiceMaker

streamd = ServiceMaker("streamd", "streamd.tap", "Stream sources to HTTP clients", "streamd")
