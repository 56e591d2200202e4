# syntax=docker/dockerfile:1
# One image for every Toolbus service; docker-compose.yml picks the service with `command`.
# TypeScript runs through tsx (a runtime dependency), so there is no build step.
FROM node:20-slim

WORKDIR /app

# Dependencies first, so that a change in the code does not reinstall them. The lockfile holds
# the native KurrentDB bridge for linux x64 and arm64 (glibc), which this Debian image uses.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

COPY . .

ENV HOST=0.0.0.0
EXPOSE 8080 8081 8082
USER node

CMD ["npx", "tsx", "services/dispatcher/main.ts"]
